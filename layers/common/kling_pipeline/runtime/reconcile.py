"""The reconcile function's parts, built once per container from ReconcileEnvironment (contract/settings.py)."""

from __future__ import annotations

import boto3

from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.adapters.sqs import SqsDeadLetterQueue, SqsJobQueue
from kling_pipeline.contract.settings import ReconcileEnvironment
from kling_pipeline.governor.governor import Governor
from kling_pipeline.progress import JobProgress
from kling_pipeline.reconcile.dead_letters import DeadLetterSweeper
from kling_pipeline.reconcile.reconciler import JobReconciler, Reconciler
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.kling import kling_client
from kling_pipeline.runtime.parts import image_copier, job_records


class ReconcileRuntime:
    def __init__(self, env: ReconcileEnvironment) -> None:
        self.options = env
        records = job_records(env)  # thread-safe: shared by the run's worker threads
        kling = kling_client(env)
        progress = JobProgress(records, kling, image_copier(env))
        dead_letters = DeadLetterSweeper(
            SqsDeadLetterQueue(boto3.client("sqs"), env.jobs_dlq_url, jobs_queue_url=env.jobs_queue_url),
            records,
            kling,
            progress,
            max_messages=env.reconcile_max_dead_letters_per_run,
        )
        queue = SqsJobQueue(env.jobs_queue_url, sqs=boto3.client("sqs")) if env.jobs_queue_url else None
        governor = Governor(DynamoAccountLedger(env.jobs_table, boto3.client("dynamodb")), env)
        self.reconciler = Reconciler(
            records,
            JobReconciler(records, kling, progress, env, queue=queue),
            env,
            dead_letters=dead_letters,
            governor=governor,
        )

    @classmethod
    def from_env(cls) -> ReconcileRuntime:
        return cls(load_environment(ReconcileEnvironment))
