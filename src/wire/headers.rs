//! Optional UserMessage headers (MS-MQMQ 2.2.20.x): TransactionHeader, SecurityHeader,
//! MessagePropertiesHeader, DebugHeader, SoapHeader, MultiQueueFormatHeader, SRMP sections.
