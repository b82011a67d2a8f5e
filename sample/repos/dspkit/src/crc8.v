// dk_crc8: CRC-8 over a byte stream, polynomial x^8 + x^2 + x + 1 (0x07).
// init loads the register with INIT; each cycle with valid folds one data
// byte into the CRC, most significant bit first, with no reflection and no
// final XOR. crc always shows the CRC of the bytes folded in since init.
module dk_crc8 #(
    parameter [7:0] INIT = 8'h00
) (
    input            clk,
    input            init,
    input            valid,
    input      [7:0] data,
    output reg [7:0] crc
);
    function [7:0] crc8_byte;
        input [7:0] c;
        input [7:0] d;
        integer i;
        reg [7:0] r;
        begin
            r = c ^ d;
            for (i = 0; i < 8; i = i + 1)
                r = r[7] ? ((r << 1) ^ 8'h07) : (r << 1);
            crc8_byte = r;
        end
    endfunction

    always @(posedge clk) begin
        if (init)
            crc <= INIT;
        else if (valid)
            crc <= crc8_byte(crc, data);
    end
endmodule
