//! Format names (MS-MQMQ 2.1): the text grammar, and the mapping to and from wire encodings.
