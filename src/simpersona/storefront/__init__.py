"""The storefront: a server-rendered web shop built from a canonical catalog, logging canonical
events, with A/B variants, and a Gymnasium-style environment for shopping agents.

Modules: `config` (settings), `catalog` (shops, collections, search), `eventlog` (buffered
Parquet writer), `app` (`create_app`, `serve`), `snapshot` (HTML → compact DOM snapshot),
`actions` (the typed JSON action schema, parsed in one place), `transports` (in-process ASGI,
HTTP, Chromium), `env` (`ShopEnv`). Nothing is built at import time.
"""
