"""The `simpersona` command line: one subcommand per pipeline stage.

Every stage command takes `--preset NAME|FILE` and repeatable `--set a.b=c`; its flags are
shortcuts for config fields. Stage modules are imported inside the command, so `simpersona
--help` stays fast and nothing heavy loads at import time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from simpersona.config import ConfigError, load_config

PRESET = click.option("--preset", default=None, help="YAML preset: a file or a name in simpersona/presets.")
SETS = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")


class _Group(click.Group):
    """Turns config and input errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        from simpersona.events.validate import IngestError

        try:
            return super().invoke(ctx)
        except (ConfigError, IngestError, FileNotFoundError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="simpersona")
def main() -> None:
    """SimPersona: buyer personas from raw clickstreams.

    Data flow: ingest → features → vqvae → personas → storefront → traces → sft → simulate → evaluate.
    """


@main.command()
@click.option("--format", "fmt", default=None, help="Source format: canonical, rees46, taobao, tmall, gmerch, otto.")
@click.option("--input", "input_path", default=None, type=click.Path(path_type=Path), help="Source file or folder.")
@click.option("--catalog", default=None, type=click.Path(path_type=Path), help="Catalog file (canonical format only).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--strict", is_flag=True, default=None, help="Fail on the first rejected row.")
@click.option("--salt", default=None, help="HMAC key for buyer ids (hex); generated and stored if absent.")
@PRESET
@SETS
def ingest(fmt, input_path, catalog, out, strict, salt, preset, sets) -> None:
    """Read a real or generated event log into the canonical schema, keeping rejects aside."""
    from simpersona.events import ingest as stage

    values = {"format": fmt, "input": input_path, "catalog": catalog, "strict": strict, "salt": salt}
    cfg = load_config(stage.IngestConfig, preset, sets, section="ingest", values=values)
    run_dir = out or Path("runs/ingest")
    summary = stage.run(cfg, run_dir)
    click.echo(stage.format_summary(summary))
