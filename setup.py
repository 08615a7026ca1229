"""segloc: ament_python-compatible setup (colcon on a ROS 2 install, pip -e on a pip-only one)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "segloc_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["segloc_core", "segloc_core.*", "segloc_ros", "segloc_ros.*"]),
    package_data={"segloc_core": ["assets/*", "configs/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="segloc team",
    maintainer_email="segloc@example.org",
    description="SegLoc visual localization for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "segloc = segloc_ros.cli:main",
            "segmentation_node = segloc_ros.nodes.segmentation_node:main",
            "retrieval_node = segloc_ros.nodes.retrieval_node:main",
            "refiner_node = segloc_ros.nodes.refiner_node:main",
            "lifecycle_manager = segloc_ros.nodes.lifecycle_manager:main",
        ],
    },
)
