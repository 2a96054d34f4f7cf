"""Input data: dataset readers, the tf.data pipeline, augmentation, preprocessing, image checks."""
