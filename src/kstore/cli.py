"""kstore command line (being built)."""

import click


@click.group()
def main() -> None:
    """kstore: a Kafka-compatible log engine."""
