"""Tools around muplify, one module per job.

* :mod:`~muplify.tools.batch`: what a batch is, and the default loss;
* :mod:`~muplify.tools.corpus`: the built-in text corpus (the Python standard library's own files, as bytes);
* :mod:`~muplify.tools.train`: the training loop the tools share (schedule, evaluation, ``report``, divergence);
* :mod:`~muplify.tools.coord_check`: the coordinate check (recording in :mod:`~muplify.tools.coord_record`, verdict
  in :mod:`~muplify.tools.coord_result`, figure in :mod:`~muplify.tools.coord_plot`);
* :mod:`~muplify.tools.tune`: ``muplify.tune``, the proxy sweep on Optuna (search space in
  :mod:`~muplify.tools.tune.space`, ``python -m muplify tune/transfer`` in :mod:`~muplify.cli.tune`);
* :mod:`~muplify.tools.demo`: ``python -m muplify demo``;
* :mod:`~muplify.tools.apidoc`: ``docs/API.md`` generated from the code.
"""
