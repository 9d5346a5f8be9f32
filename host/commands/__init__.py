"""The `tandem` subcommands, in the order `tandem --help` lists them."""

from . import compile, data, evaluate, generate, perf, prune_experts, serve, train, upcycle

COMMANDS = [generate, serve, perf, compile, train, data, evaluate, upcycle, prune_experts]
