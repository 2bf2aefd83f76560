"""The arguments of the ``mpcs`` commands, one module per command group. They import
nothing but :mod:`argparse`, so that ``mpcs --help`` and the parsing of any command stay
fast; the commands themselves live in :mod:`mpcs.cli.data`, :mod:`mpcs.cli.training`, ...
"""
