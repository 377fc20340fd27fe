"""`python -m simpersona` runs the CLI."""

from simpersona.cli import main

if __name__ == "__main__":
    main()
