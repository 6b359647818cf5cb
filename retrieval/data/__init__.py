"""Course data: validated tables (`course`) and aggregated 0-1 relevance targets (`targets`)."""
from __future__ import annotations

from retrieval.data.course import CourseData, list_images, load_course, load_test_queries, read_queries_file
from retrieval.data.targets import Agreement, agreement, build_targets, compare_expert_methods

__all__ = ["Agreement", "CourseData", "agreement", "build_targets", "compare_expert_methods", "list_images",
           "load_course", "load_test_queries", "read_queries_file"]
