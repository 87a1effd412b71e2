"""The zero-shot XTREME / XTREME-R evaluator: the official scorer (``score``), and Tatoeba-style retrieval
(``tatoeba``). Fine-tuning of the other tasks (``run``) is still to come."""
