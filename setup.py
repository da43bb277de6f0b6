"""Carries the bundled data folders (templates/, cloud-init/, images/) into wheels as
ccloudvm/data/, where ccloudvm.state.paths.resource_dir finds them. Everything else is in
pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_FOLDERS = ("templates", "cloud-init", "images")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        for name in DATA_FOLDERS:
            target = Path(self.build_lib) / "ccloudvm" / "data" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(Path(__file__).parent / name, target)


setup(cmdclass={"build_py": BuildWithData})
