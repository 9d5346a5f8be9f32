"""The host side: compiler, runtime (Device protocol and backends, pipelines), serving and
the `tandem` command line."""
