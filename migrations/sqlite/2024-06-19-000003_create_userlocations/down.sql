DROP TABLE userlocations;
