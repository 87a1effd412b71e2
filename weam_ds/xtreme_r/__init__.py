"""The zero-shot XTREME / XTREME-R evaluator: the official scorer (``score``), fine-tuning and prediction of
every task under the official protocol (``run``; one description per task in ``tasks.py``, one recipe per task
in ``recipes/``), and Tatoeba-style retrieval on a data_prep dataset (``tatoeba``)."""
