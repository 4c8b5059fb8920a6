"""Inference: a trained model (checkpoint or registered MLflow model) turned into keypoints.

  predictor.py  Predictor: images (+ person boxes) -> keypoints in image pixels; from a checkpoint
  images.py     reading and checking image files and bytes before decoding
  cli.py        python -m trainer predict
  serving.py    `mlflow models serve` as a process group; the /invocations JSON
"""
