"""fan_out: one task fans out to six parallel partitions, then one task gathers them."""

from raftflow import DAG, BashTask

with DAG("fan_out", schedule=None, description="Parallel partitions spread over the nodes.",
         tags=["example"]) as dag:
    start = BashTask("list_partitions", command="echo 'partitions: 0..5'")
    parts = [BashTask(f"process_partition_{i}", command=f"echo 'partition {i} on '$RAFTFLOW_NODE_ID; sleep 2")
             for i in range(6)]
    gather = BashTask("gather", command="echo 'all partitions processed'")

    start >> parts >> gather
