from pkiform.cli import entry

entry()
