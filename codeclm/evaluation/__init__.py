"""Evaluation of codeclm models.

* :mod:`~codeclm.evaluation.codec_eval`: :func:`evaluate_codec`, objective metrics of the codec
  at several bandwidths, optionally against Opus at the same bitrates.
* the ``codeclm eval`` command group lives in :mod:`codeclm.cli.evaluation`.

Names are imported lazily so that ``codeclm --help`` does not load the metrics stack.
"""

__all__ = ["evaluate_codec", "collect_inputs", "default_metrics"]


def __getattr__(name: str):
    if name in __all__:
        from codeclm.evaluation import codec_eval

        return getattr(codec_eval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
