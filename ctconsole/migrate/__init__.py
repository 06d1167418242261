"""Live migration: engine (state machine), events, agent (destination side), channel, journal.

Entry point for the CLI and the TUI::

    from ctconsole.migrate.engine import Migration, MigrationRequest
    done = Migration(MigrationRequest(ref="tree:1234", dest="netns:ctlab-dst1"), emit=callback).run()

``emit`` receives the frozen dataclasses of :mod:`ctconsole.migrate.events`
(the last one is ``Done``); ``Migration.abort()`` may be called from another
thread. Nothing here is imported eagerly, so importing the package is free.
"""
