"""Evaluation: localization, trajectory and segmentation metrics and the `segloc eval` reports.

Lives here: `evaluate` (the `segloc eval` command), `trajectory_metrics` (recalls, ATE/RPE, plots),
`seg_metrics` (label consistency and retrieval of a network on a world), `retrieve` (`segloc
retrieve`). The label-quality functions (`segloc_core.label_metrics`) sit at the top level because
`segloc map info` reports them too.

May import: everything in the library except `bench`.
"""
