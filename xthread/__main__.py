"""``python -m xthread``: the command line."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m xthread",
        description="xthread: threads you can stop safely.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo", help="run a thread pool that stops every kind of task: "
        "one that finishes, one spinning in Python, one in a killable "
        "wait, one that swallows the stop, one over its time limit, one "
        "stuck in a C call; print each outcome and the pool's health")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run
        return run()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
