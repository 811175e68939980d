"""tensorflow-datasets builders: ``hits_sim`` (a frozen simulated set) and ``hits_real`` (real
labelled sequences), written as array_record and read without TensorFlow.

    python -m rcnn_jax.datasets.build hits_sim --config configs/hits.py --data_dir DIR
    python -m rcnn_jax.datasets.build hits_real --data_dir DIR [--data FOLDER ...]

Reading (numpy, random access, no TensorFlow):

    import tensorflow_datasets as tfds
    ds = tfds.data_source('hits_sim/<config name>', data_dir=DIR, split='test')
    ds[0]['images']            # or, without this package: tfds.builder_from_directory(PATH)

``reading.load_split`` returns a split as stacked numpy arrays (hits_sim) or sequences
(hits_real). Writing needs tensorflow-datasets and array_record only (both pinned
dependencies); TensorFlow is never imported.
"""
