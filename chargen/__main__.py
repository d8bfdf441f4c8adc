from chargen.cli import cli

cli()
