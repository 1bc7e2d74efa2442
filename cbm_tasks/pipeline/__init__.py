"""The units of work of the DAGs, one module per DAG; the only code that changes a product's status."""
