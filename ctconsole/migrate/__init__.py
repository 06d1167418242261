"""Live migration: the engine (state machine) and what it is made of, plus the destination's server.

Modules: ``engine`` (Migration, MigrationRequest, Plan: one method per phase),
``options`` (the rules compiled once, with the destination; refusals),
``restoreenv`` (inherited fds, setup-namespaces actions, the source-side
restore), ``precopy`` (round policy and layout), ``netns`` (source netns
plumbing), ``journal`` (records, locks), ``recovery`` (after a console crash),
``destination`` (``ctconsole agent --stdio``: the server on the far side),
``keeper`` (the restored tree's parent), ``pipes``, ``hostview``, ``events``.
Reaching a destination is the agent layer's job (:mod:`ctconsole.agent`).

Entry point for the CLI and the TUI::

    from ctconsole.migrate.engine import Migration, MigrationRequest
    done = Migration(MigrationRequest(ref="tree:1234", dest="netns:ctlab-dst1"), emit=callback).run()

``emit`` receives the frozen dataclasses of :mod:`ctconsole.migrate.events`
(the last one is ``Done``); ``Migration.abort()`` may be called from another
thread. Nothing here is imported eagerly, so importing the package is free.
"""
