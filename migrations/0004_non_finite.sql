-- Non-finite values (NaN, ±inf) per tensor, counted at upload: a JSON object {tensor: count}
-- listing only tensors that have any. NULL: never counted (job outputs, models uploaded before).
ALTER TABLE models ADD COLUMN non_finite TEXT;
