"""``fedal bench``: benchmarks of the application layer, one job per module.

- :mod:`fedal.app.bench.cli`: the ``fedal bench`` parser, settings validation and the
  command handlers. The only module imported when :mod:`fedal.cli` builds its parser;
  it imports the others when a command runs.
- :mod:`fedal.app.bench.sampling`: ``fedal bench sampling``'s measurement, returning
  typed rows (imports torch and the query strategies).
- :mod:`fedal.app.bench.render`: rich tables of those rows.
"""
