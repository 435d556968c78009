from rlir.cli import entry

entry()
