"""Evaluation: COCO keypoint AP and MPII PCKh, and the eval command.

  runner.py       distributed prediction over the val shards (flip test), gather, completeness,
                  scoring under the manifest's protocol
  instances.py    instances -> COCO results: ground-truth vs detector boxes (rescoring, OKS-NMS)
  coco_metric.py  COCO keypoint AP (pycocotools COCOeval), results/ground-truth checks, tables
  pckh.py         MPII PCKh
  cli.py          python -m trainer eval

Nothing is imported here, so that inference can use instances.py without pycocotools.
"""
