"""The experiment side: what turns the network into runs, folders, sweeps and figures.

* :mod:`~smartmixed_np.experiments.train`: the two-phase trainer, its config, resume;
* :mod:`~smartmixed_np.experiments.runfolder`: the run folder's format, its one owner;
* :mod:`~smartmixed_np.experiments.checkpoint`: safe ``.npz`` checkpoints and models;
* :mod:`~smartmixed_np.experiments.sweep`: sweeps over architectures, models and seeds;
* :mod:`~smartmixed_np.experiments.plots`: the run-folder figures;
* :mod:`~smartmixed_np.experiments.bench`: the benchmarks;
* :mod:`~smartmixed_np.experiments.export`, :mod:`~smartmixed_np.experiments.predict`:
  the frozen network as an ONNX graph; predictions on a user's own files;
* :mod:`~smartmixed_np.experiments.archs`, :mod:`~smartmixed_np.experiments.plugins`:
  the named architectures, a user's ``--import`` modules.

The report (:mod:`smartmixed_np.report`) and the datasets (:mod:`smartmixed_np.data`)
are the experiment side's own subpackages. Nothing in :mod:`smartmixed_np.core`,
:mod:`smartmixed_np.fast` or :mod:`smartmixed_np.nn` imports from here.
"""
