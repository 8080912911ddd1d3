"""miars: membership inference attacks against recommender systems, on a pluggy core."""

__version__ = "0.1.0"
