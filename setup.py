"""Map the namespace package ``aios`` over the folders of DESIGN.md §8 (metadata lives in pyproject.toml)."""

from setuptools import find_namespace_packages, setup

ROOTS = [
    "libs/common",
    "services/scheduler",
    "services/resource-manager",
    "services/device-agent",
    "services/trainer",
    "services/model-registry",
    "services/gateway",
]

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ROOTS:
    for package in find_namespace_packages(root, include=["aios.*"], exclude=["*.__pycache__"]):
        packages.append(package)
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir,
      package_data={"aios.gateway": ["static/*"]})  # the dashboard page, served as is
