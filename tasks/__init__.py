"""Task registry and the registered tasks (importing this package registers them)."""
from tasks.registry import (DatasetMissingError, Task, TaskSpec, build_task, data_source, list_tasks, register_task,
                            task_spec)
from tasks import cifar, first_token, listops, pathfinder, retrieval, speech_commands, text  # noqa: F401  (registration)

__all__ = ["DatasetMissingError", "Task", "TaskSpec", "build_task", "data_source", "list_tasks", "register_task",
           "task_spec"]
