"""Command-line tools around the node graph: rosbag2 writing/playing/recording (`bag`), replay
evaluation (`bag_eval`), the demo, and the graph benchmarks (`bench_encoding`, `bench_pipeline`).
They start and drive the nodes; the nodes never import them."""
