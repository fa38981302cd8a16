//! Authentication and authorization for vmqtt: the password file and the
//! ACL file. (Being written.)
