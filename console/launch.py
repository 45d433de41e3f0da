"""The process ``imagegen console`` becomes (``os.execv``): Streamlit's own command line, ``streamlit run …``,
ending on Ctrl+C with status 130 and no "Aborted!", as the other commands do.

QA: run as ``python -m streamlit``, a Ctrl+C printed Click's "Aborted!" and exit status 1, which reads as a
failure to a shell or a service manager.
"""

from __future__ import annotations

import sys

from imagegen_core.cli_common import EXIT_INTERRUPTED, sigint_interrupts


def main(argv: list[str] | None = None) -> int:
    """Run ``streamlit`` with ``argv`` (default: this process's arguments); its status, 130 when interrupted."""
    import click
    from streamlit.web import cli

    sigint_interrupts()
    try:
        cli.main(args=sys.argv[1:] if argv is None else argv, prog_name="streamlit", standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        return EXIT_INTERRUPTED
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
