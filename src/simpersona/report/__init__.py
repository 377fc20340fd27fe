"""The HTML report: one self-contained page (inline SVG, no external assets) built from whatever
a run folder holds; missing parts are shown as "not run". `build.run(ReportConfig, out_dir)`,
CLI `simpersona report --run RUN_DIR`. `svg` holds the small chart functions.
"""
