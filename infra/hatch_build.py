"""Wheel build hook: ship the project files an installed riskloop runs (the dbt project, the feature
repo, the DAGs, the expectation suites, the runbooks) inside the package, as ``riskloop/project/``
(``riskloop.core.config.PROJECT_ROOT`` falls back to it). Regular wheels only: an editable install
runs from the checkout, which has them already."""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PROJECT_FILES = ("dbt_project", "feature_repo", "dags", "expectations", "docs/runbooks")


class ProjectFilesHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version != "standard":
            return
        for path in PROJECT_FILES:
            build_data["force_include"][path] = f"riskloop/project/{path}"
