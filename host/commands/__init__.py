"""The `tandem` subcommands, in the order `tandem --help` lists them."""

from . import (
    compile,
    data,
    evaluate,
    generate,
    perf,
    prune_experts,
    rtl,
    serve,
    train,
    upcycle,
)

COMMANDS = [generate, serve, perf, compile, rtl, train, data, evaluate, upcycle, prune_experts]
