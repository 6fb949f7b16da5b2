"""etl_chain: extract -> transform -> load, strictly one after another."""

from raftflow import DAG, BashTask

with DAG("etl_chain", schedule=None, description="A serial pipeline: each step waits for the one before.",
         tags=["example"]) as dag:
    extract = BashTask("extract", command='echo "extracting rows for $RAFTFLOW_LOGICAL_DATE"; sleep 1; echo 1000')
    transform = BashTask("transform", command='echo "transforming on $RAFTFLOW_NODE_ID"; sleep 1')
    load = BashTask("load", command='echo "loading (attempt $RAFTFLOW_ATTEMPT)"; sleep 1; echo loaded')

    extract >> transform >> load
