"""A location's messages out of HighLevel and into files, resumably.

- ``files``: JSON Lines output with a checkpoint, for conversations by id;
- ``sync``: incremental runs into numbered files, with a high-water mark;
- ``jobs``: an agency's locations as arq jobs, across processes and machines
  (``arq ghl_async.export.jobs.WorkerSettings``; needs the ``arq`` extra).
"""
