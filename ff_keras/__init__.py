"""ff_keras: one Keras model for age, gender and race from a face crop."""

__version__ = "0.1.0"
