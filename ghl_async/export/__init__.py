"""A location's messages out of HighLevel and into a sink, resumably and exactly once.

- ``pipeline``: :func:`export_location`, one location into a sink, page by page, with the
  state committed with the rows (and the conversation-by-conversation fallback);
- ``sink``: the :class:`Sink` contract and the :class:`ExportState` a sink keeps;
- ``schema``: the mirror's tables and columns, shared by every database sink;
- ``sqlite``: :class:`SQLiteSink`, the embedded mirror (the standard library's sqlite3);
- ``postgres``: ``PostgresSink``, a mirror many workers write at once (needs the
  ``postgres`` extra: ``from ghl_async.export.postgres import PostgresSink``);
- ``targets``: :func:`sink_for`, the sink a ``sqlite:///`` or ``postgresql://`` URL names;
- ``jsonl``: :class:`JsonlSink`, a location into one JSON Lines file, with a checkpoint;
- ``files``: JSON Lines output with a checkpoint, for conversations by id;
- ``incremental``: :func:`sync_location`, a location kept in sync run after run (a
  lookback, marks that never pass the run's start or the server's clock);
- ``numbered``: :class:`NumberedFiles`, a sync's runs as numbered JSON Lines files;
- ``jobs``: an agency's locations as arq jobs, across processes and machines (needs
  the ``arq`` extra; ``ghl-async worker`` runs one).
"""

from ghl_async.export.incremental import sync_location
from ghl_async.export.jsonl import JsonlSink
from ghl_async.export.numbered import NumberedFiles
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.export.sqlite import SQLiteSink
from ghl_async.export.targets import sink_for

__all__ = [
    "Batch",
    "ExportResult",
    "ExportState",
    "JsonlSink",
    "NumberedFiles",
    "SQLiteSink",
    "Sink",
    "export_location",
    "sink_for",
    "sync_location",
]
