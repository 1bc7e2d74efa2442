-- Sentinel-1 CARD production (issue 10).
-- A raw S1 product (GRD, SLC) whose CARD jobs are planned becomes 'processed': its data goes on
-- in the CARD products, which are catalogue products of their own (catalogue 'card', uid = the
-- job key) with status rows new -> processing -> ready -> extracting -> extracted. A CARD row
-- exists from planning on; its file exists in the store only once the row is 'ready'.
ALTER TABLE cbm.product_status DROP CONSTRAINT product_status_status_check;
ALTER TABLE cbm.product_status ADD CONSTRAINT product_status_status_check
    CHECK (status IN ('new', 'processing', 'processed', 'ready', 'extracting', 'extracted', 'failed', 'skipped'));
