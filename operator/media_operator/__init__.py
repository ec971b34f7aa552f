"""media-operator: quarantines media-service pods whose task-leak gauge stays up."""
