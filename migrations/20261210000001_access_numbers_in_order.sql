-- The access-number listing reads every range in (digit length, first number) order, a page
-- at a time after the last one sent: each page is a short walk of this index, not a scan and
-- sort of every range after the cursor.
CREATE INDEX access_numbers_in_order ON access_numbers (digits, number);
