"""Experiment drivers and their plots, for the command line (``fisherkit.commands``), the demo report
(``fisherkit.report``), the benchmarks and the tests. Not library API: nothing in the library imports it.

* ``ngd``, ``ngd_plots``, ``ngd_diagnostics``: natural gradient vs SGD and Adam on digits
  (``fisherkit ngd``), and the "Adam's v vs the diagonal Fisher" check;
* ``continual``, ``continual_plots``: the continual-learning loop over task streams (``fisherkit ewc``);
* ``active``, ``active_plots``: active-learning strategy comparisons (``fisherkit active``);
* ``spectrum``: how well each Fisher structure approximates the dense Fisher (``fisherkit fisher``).

Import the submodule you need (``from fisherkit.studies import ngd``); this package imports nothing
eagerly, so neither torch training code nor matplotlib loads until a study is used.
"""
