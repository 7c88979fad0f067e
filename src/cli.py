"""What every command-line entry point shares: user errors become one line on stderr and exit code 2."""
import sys

from src.errors import UserError


def run_main(main, argv=None):
    """Call `main(argv)`; a UserError is printed as `error: <message>` and gives exit code 2."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def not_built_yet(prog, capability):
    """For entry points whose capability has not landed: say so and fail, never pretend to run."""
    print(f"{prog}: {capability} is not built yet in this repository (see the README's Status section).",
          file=sys.stderr)
    return 2
