-- jma-poller state, schema 2: several jmafile PuLL streams (one per planned group of
-- jmafile.types), each in its own `cursors` row ('jmafile' for everything, 'jmafile:{types}'
-- otherwise).
-- Never edit this file once released: add a new, later-numbered migration instead.

-- The data identifier (HEADER_VALUES, what the list's `type` filter matches) of a jmafile
-- item. A stream that is new (a type added, groups changed) starts from the newest serial the
-- mirror holds for its types; this column and its index answer that.
ALTER TABLE items ADD COLUMN type_name TEXT;
CREATE INDEX items_type ON items (type_name, serial) WHERE type_name IS NOT NULL;

-- Rows listed before this column existed: read the identifier from the file name
-- (jmafile/{classification}/{YYYY-MM-DD}/Z__C_{author}_{yyyyMMddHHmmss}_{identifier}_{tail}),
-- so an upgraded mirror knows what it holds. The last `_` segment is cut with the rtrim trick
-- (rtrim by every character but '_' leaves the text up to the last '_').
UPDATE items
SET type_name = (
    WITH leaf(l) AS (SELECT substr(path, length('jmafile/') + length(classification) + 13)),
         rest(r) AS (SELECT substr(l, 26) FROM leaf)
    SELECT CASE WHEN instr(r, '_') > 0
                THEN substr(rtrim(r, replace(r, '_', '')), 1, length(rtrim(r, replace(r, '_', ''))) - 1)
           END
    FROM rest
)
WHERE source = 'jmafile' AND type_name IS NULL AND path IS NOT NULL
  AND substr(path, length('jmafile/') + length(classification) + 13)
      GLOB 'Z__C_[A-Z][A-Z][A-Z][A-Z]_[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]_*';
