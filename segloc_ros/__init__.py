"""segloc ROS 2 adapters: nodes, TF, image conversion, launcher and bag tools over segloc_core."""
